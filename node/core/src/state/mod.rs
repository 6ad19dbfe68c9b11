//! The tunnel logic of a client and a gateway, on top of a [`Node`], sans-IO.
//!
//! [`ClientState`] routes packets from the TUN device to the gateway that serves their
//! destination, asks the portal for connections on demand and holds packets back until one is
//! up. [`GatewayState`] enforces who may reach what: it forwards a client's packets to the
//! resource network only while the portal's authorization for that (client, resource) lasts,
//! and answers the rest with ICMP "administratively prohibited".
//!
//! # Driving a tunnel
//! Both are driven the same way, and never read a clock or a random source of their own:
//!
//! - Inputs: IP packets read from the TUN device (`handle_tun_packet`), UDP datagrams from the
//!   network (`handle_network_input`), typed messages from the portal (`handle_portal_message`)
//!   and timeouts (`handle_timeout`). Every one takes `now`, which must never go backwards.
//! - Outputs: a TUN packet or a datagram returned straight from the call that produced it (the
//!   hot paths allocate nothing), then whatever was queued: datagrams (`poll_transmit`),
//!   messages for the portal (`poll_portal_message`) and events (`poll_event`).
//! - After every input, drain all three queues, then ask `poll_timeout` (an instant and a
//!   reason) when to call `handle_timeout` next. Calling `handle_timeout` early is a no-op for
//!   the tunnel's own timers.
//!
//! Wall-clock time is needed only by the gateway, to turn the portal's unix expiry times into
//! instants: it is passed in once, at construction.

mod authorizations;
mod client;
mod gateway;
mod icmp;
mod resources;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use client::{
    ClientEvent, ClientState, ClientStats, AUTHORIZATION_GUARD, AUTHORIZATION_RENEW_BEFORE,
    PENDING_QUEUE_CAPACITY, REQUEST_TIMEOUT,
};
pub use gateway::{FlowEndReason, GatewayEvent, GatewayState, GatewayStats};
pub use icmp::prohibited_reply;
pub use resources::ResourceTable;

use crate::portal::{Relay, RelaysPresence};
use crate::turn::RelayConfig;
use crate::{Node, PeerId};

/// What the node needs to use a relay the portal announced.
fn relay_config(relay: &Relay) -> RelayConfig {
    RelayConfig {
        id: relay.id,
        server: relay.address,
        username: relay.username.clone(),
        password: relay.password.clone(),
    }
}

/// Makes `relays` the node's relays (an `init`): others are removed, listed ones added or kept.
fn replace_relays<TId: PeerId>(node: &mut Node<TId>, relays: &[Relay], now: Instant) {
    let stale: Vec<_> = node
        .relays()
        .filter(|id| !relays.iter().any(|r| r.id == *id))
        .collect();
    for id in stale {
        node.remove_relay(id, now);
    }
    for relay in relays {
        node.add_relay(relay_config(relay), now);
    }
}

/// Applies a `relays_presence`: gone relays first, so a relay that moved is replaced.
fn apply_relays_presence<TId: PeerId>(
    node: &mut Node<TId>,
    presence: &RelaysPresence,
    now: Instant,
) {
    for id in &presence.disconnected_ids {
        node.remove_relay(*id, now);
    }
    for relay in &presence.connected {
        node.add_relay(relay_config(relay), now);
    }
}

/// The earlier of two wake-ups, with its reason.
fn earliest(
    a: Option<(Instant, &'static str)>,
    b: Option<(Instant, &'static str)>,
) -> Option<(Instant, &'static str)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (Some(t), None) | (None, Some(t)) => Some(t),
        (None, None) => None,
    }
}

/// Far enough in the future to mean "never" without overflowing an `Instant`.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Maps the portal's unix times onto the caller's instants, from one pair read at construction.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    instant: Instant,
    wall: SystemTime,
}

impl WallClock {
    fn new(instant: Instant, wall: SystemTime) -> Self {
        Self { instant, wall }
    }

    /// The instant at `unix_secs`; times before the anchor map to the anchor (already past for
    /// any later `now`), absurdly late ones to [`NEVER`].
    fn instant_at(&self, unix_secs: u64) -> Instant {
        let at = UNIX_EPOCH
            .checked_add(Duration::from_secs(unix_secs))
            .or_else(|| self.wall.checked_add(NEVER))
            .unwrap_or(self.wall);
        match at.duration_since(self.wall) {
            Ok(ahead) => self
                .instant
                .checked_add(ahead.min(NEVER))
                .unwrap_or(self.instant),
            Err(behind) => self
                .instant
                .checked_sub(behind.duration())
                .unwrap_or(self.instant),
        }
    }
}
