//! The relay's Prometheus metrics: a [`Snapshot`] of the server's counters, taken by the
//! runtime ([`crate::runtime::run_measured`]), rendered as OpenMetrics text when scraped.

use crate::runtime::Traffic;
use crate::{Server, Stats};

/// Prefix of every relay metric name.
pub const PREFIX: &str = "zta_relay";

/// What the relay's metrics show, copied out of the event loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The core's counters.
    pub stats: Stats,
    /// The sockets' counters.
    pub traffic: Traffic,
    /// Allocations held.
    pub allocations: u64,
    /// Permissions held, over all allocations.
    pub permissions: u64,
    /// Channels bound, over all allocations.
    pub channels: u64,
}

impl Snapshot {
    /// The current values of `server`, with the runtime's `traffic`.
    pub fn of(server: &Server, traffic: &Traffic) -> Self {
        Self {
            stats: *server.stats(),
            traffic: *traffic,
            allocations: server.allocation_count() as u64,
            permissions: server.permission_count() as u64,
            channels: server.channel_count() as u64,
        }
    }

    /// The snapshot as OpenMetrics text (names start with [`PREFIX`]).
    pub fn render(&self) -> String {
        let s = &self.stats;
        let t = &self.traffic;
        let mut m = telemetry::MetricSet::new(PREFIX);
        m.gauge("allocations", "Allocations held", gauge(self.allocations))
            .gauge(
                "permissions",
                "Permissions held, over all allocations",
                gauge(self.permissions),
            )
            .gauge(
                "channels",
                "Channels bound, over all allocations",
                gauge(self.channels),
            )
            .counter(
                "allocations_created",
                "Allocations created",
                s.allocations_created,
            );
        let freed = "Allocations freed, by reason";
        m.counter_with(
            "allocations_freed",
            freed,
            &[("reason", "deleted")],
            s.allocations_deleted,
        )
        .counter_with(
            "allocations_freed",
            freed,
            &[("reason", "expired")],
            s.allocations_expired,
        )
        .counter("requests", "STUN and TURN requests answered", s.requests)
        .counter("error_responses", "Error responses sent", s.error_responses)
        .counter(
            "credentials_renewed",
            "Requests that moved an allocation to renewed credentials of its user",
            s.credentials_renewed,
        );

        let relayed = "Datagrams relayed, by direction and framing";
        for (direction, kind, value) in [
            ("to_peer", "channel_data", s.channel_data_from_clients),
            ("to_peer", "send_indication", s.send_indications),
            ("to_client", "channel_data", s.channel_data_to_clients),
            ("to_client", "data_indication", s.data_indications),
        ] {
            m.counter_with(
                "relayed_datagrams",
                relayed,
                &[("direction", direction), ("kind", kind)],
                value,
            );
        }
        m.counter(
            "relayed_internally",
            "Datagrams relayed from one allocation of this relay to another",
            s.relayed_internally,
        );

        for (name, help, client, peer) in [
            (
                "received_datagrams",
                "UDP datagrams received, by side (clients on the listening port, peers on relay \
                 ports)",
                t.client_datagrams_received,
                t.peer_datagrams_received,
            ),
            (
                "received_bytes",
                "UDP payload bytes received, by side",
                t.client_bytes_received,
                t.peer_bytes_received,
            ),
            (
                "sent_datagrams",
                "UDP datagrams sent, by side",
                t.client_datagrams_sent,
                t.peer_datagrams_sent,
            ),
            (
                "sent_bytes",
                "UDP payload bytes sent, by side",
                t.client_bytes_sent,
                t.peer_bytes_sent,
            ),
        ] {
            m.counter_with(name, help, &[("side", "client")], client)
                .counter_with(name, help, &[("side", "peer")], peer);
        }

        let dropped = "Datagrams dropped, by reason";
        for (reason, value) in [
            ("malformed", s.malformed),
            ("no_allocation", s.dropped_no_allocation),
            ("no_permission", s.dropped_no_permission),
            ("unbound_channel", s.dropped_unbound_channel),
            ("other", s.dropped_other),
        ] {
            m.counter_with("dropped", dropped, &[("reason", reason)], value);
        }
        let refused =
            "Requests refused by policy, quota or expiry, by reason (forbidden_peer also \
                       counts Send indications to denied peers; expired_credentials counts only \
                       authentic ones)";
        for (reason, value) in [
            ("expired_credentials", s.expired_credentials),
            ("forbidden_peer", s.forbidden_peers),
            ("allocation_quota", s.allocation_quota_refusals),
            ("permission_quota", s.permission_quota_refusals),
        ] {
            m.counter_with("refused", refused, &[("reason", reason)], value);
        }
        m.render()
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_its_labels() {
        let mut snapshot = Snapshot {
            allocations: 2,
            permissions: 3,
            channels: 1,
            ..Snapshot::default()
        };
        snapshot.stats.allocations_created = 5;
        snapshot.stats.allocations_expired = 3;
        snapshot.stats.channel_data_to_clients = 7;
        snapshot.stats.allocation_quota_refusals = 4;
        snapshot.stats.dropped_no_permission = 6;
        snapshot.traffic.peer_bytes_received = 1200;
        let text = snapshot.render();
        for line in [
            "# TYPE zta_relay_allocations gauge",
            "zta_relay_allocations 2",
            "zta_relay_permissions 3",
            "zta_relay_channels 1",
            "# TYPE zta_relay_allocations_created counter",
            "zta_relay_allocations_created_total 5",
            "zta_relay_allocations_freed_total{reason=\"deleted\"} 0",
            "zta_relay_allocations_freed_total{reason=\"expired\"} 3",
            "zta_relay_relayed_datagrams_total{direction=\"to_client\",kind=\"channel_data\"} 7",
            "zta_relay_received_bytes_total{side=\"peer\"} 1200",
            "zta_relay_dropped_total{reason=\"no_permission\"} 6",
            "zta_relay_refused_total{reason=\"allocation_quota\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
