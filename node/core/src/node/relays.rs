//! The node's side of the relays: allocations, their candidates, and relayed transmits.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Node, Transmit};
use crate::candidate::IceCandidate;
use crate::ids::RelayId;
use crate::turn::{
    channel_data_header, Allocation, AllocationEvent, RelayConfig, RelayMessage,
    CHANNEL_DATA_HEADER_LEN, INITIAL_RTO,
};
use crate::{Error, PeerId};

/// How long after its allocation failed a relay is tried again the first time; each failure in
/// a row doubles it, up to [`RELAY_RETRY_MAX`].
pub const RELAY_RETRY_INITIAL: Duration = Duration::from_secs(5);
/// The longest wait between two tries of a relay that keeps failing.
pub const RELAY_RETRY_MAX: Duration = Duration::from_secs(60);

/// A relay waiting to be tried again.
#[derive(Debug)]
pub(super) struct Retry {
    config: RelayConfig,
    /// When to allocate again.
    pub(super) at: Instant,
    /// The wait that led here, doubled if this try fails too.
    delay: Duration,
}

/// What became of a datagram offered to the relays.
pub(super) enum FromRelay<'a> {
    /// It is not from one of our relays.
    NotRelay,
    /// A relay's own message, handled.
    Handled,
    /// A peer's datagram the relay delivered: who sent it, the relayed address it came to, and
    /// the bytes.
    Peer(SocketAddr, SocketAddr, Cow<'a, [u8]>),
}

impl<TId: PeerId> Node<TId> {
    /// Starts using a relay the portal announced: an allocation for a relayed candidate and a
    /// server-reflexive one. Announcing the same relay again with the same settings keeps it.
    ///
    /// New credentials for a relay in use (the portal mints fresh ones on every init) do not
    /// disturb its allocation: an allocation stays bound to the credentials it was made with,
    /// and the new ones are used when it has to be made again.
    pub fn add_relay(&mut self, config: RelayConfig, now: Instant) {
        // Announced again (a portal init): try it now, with what the portal says.
        self.relay_retries.remove(&config.id);
        if let Some(existing) = self.allocations.get_mut(&config.id) {
            if existing.server() == config.server && !existing.is_failed() {
                existing.set_next_credentials(config.username, config.password);
                return;
            }
            self.remove_relay(config.id, now);
        }
        tracing::info!(target: "node::turn", rid = %config.id, server = %config.server, "using relay");
        self.allocate(config, now);
    }

    fn allocate(&mut self, config: RelayConfig, now: Instant) {
        let id = config.id;
        self.former_relays.retain(|server| *server != config.server);
        let allocation = Allocation::new(config, self.rng_seed(), now);
        self.allocations.insert(id, allocation);
        self.drain_allocation(id, now);
    }

    /// Stops using a relay: its candidates are invalidated, connections move to other paths.
    pub fn remove_relay(&mut self, id: RelayId, now: Instant) {
        self.relay_retries.remove(&id);
        self.retry_delays.remove(&id);
        let Some(mut allocation) = self.allocations.remove(&id) else {
            return;
        };
        tracing::info!(target: "node::turn", rid = %id, "relay removed");
        allocation.release(now);
        let (src, dst) = (allocation.local(), allocation.server());
        while let Some(bytes) = allocation.poll_transmit() {
            self.transmits.push_back(Transmit {
                src,
                dst,
                payload: self.buffer_from(&bytes),
                via: None,
                seal: None,
            });
        }
        self.forget_candidates_of(&allocation, now);
        self.forget_peers_candidates_on(&allocation, now);
        self.flush_staged(now);
    }

    /// The relay is gone (withdrawn, or it stopped answering us): so are the peers'
    /// candidates on it. A peer signals their end too, unless it restarted meanwhile and
    /// cannot; one whose allocation there still works signals it again when its connection is
    /// refreshed.
    fn forget_peers_candidates_on(&mut self, allocation: &Allocation, now: Instant) {
        let mut ips = vec![allocation.server().ip()];
        ips.extend(allocation.relayed().map(|a| a.ip()));
        let ids: Vec<TId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                for ip in &ips {
                    conn.remove_remote_relayed_on(*ip, now);
                }
            }
            self.drain_connection_events(id);
        }
    }

    /// Gives every allocation back (a Refresh with lifetime 0), before the node stops: otherwise
    /// each one stays on its relay until it expires (10 minutes), counted against the quota of
    /// this node's credentials there, and a node restarted a few times in a row is refused an
    /// allocation.
    pub fn release_relays(&mut self, now: Instant) {
        let relays: Vec<RelayId> = self.relays().collect();
        for id in relays {
            self.remove_relay(id, now);
        }
    }

    /// The relays in use, and those waiting to be tried again.
    pub fn relays(&self) -> impl Iterator<Item = RelayId> + '_ {
        self.allocations
            .keys()
            .chain(self.relay_retries.keys())
            .copied()
    }

    /// The relay in use whose TURN server is at `server`.
    fn relay_at(&self, server: SocketAddr) -> Option<RelayId> {
        self.allocations
            .values()
            .find(|a| a.server() == server)
            .map(Allocation::id)
    }

    /// The relayed address on `relay`, once allocated.
    pub fn relayed_address(&self, relay: RelayId) -> Option<SocketAddr> {
        self.allocations.get(&relay).and_then(Allocation::relayed)
    }

    /// Our relayed addresses, one per allocation made.
    pub fn relayed_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.allocations.values().filter_map(Allocation::relayed)
    }

    fn rng_seed(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.rng)
    }

    fn buffer_from(&self, bytes: &[u8]) -> crate::pool::Buffer {
        let mut buf = self.pool.pull();
        buf.storage_mut()[..bytes.len()].copy_from_slice(bytes);
        buf.set_range(0..bytes.len());
        buf
    }

    /// Every local candidate the relays gave us, with the relay of the relayed ones.
    pub(super) fn relay_candidates(&self) -> Vec<(IceCandidate, Option<RelayId>)> {
        let mut out = Vec::new();
        for allocation in self.allocations.values() {
            let base = allocation.local().unwrap_or(allocation.server());
            if let Some(c) = allocation
                .server_reflexive()
                .and_then(|a| IceCandidate::server_reflexive(a, base).ok())
            {
                out.push((c, None));
            }
            if let Some(c) = allocation
                .relayed()
                .and_then(|a| IceCandidate::relayed(a, base).ok())
            {
                out.push((c, Some(allocation.id())));
            }
        }
        out
    }

    /// Permissions and channels to `peer` on every relay, so checks through them can start.
    pub(super) fn bind_channels_to(&mut self, peer: SocketAddr, now: Instant) {
        let ids: Vec<RelayId> = self.allocations.keys().copied().collect();
        for id in ids {
            if let Some(allocation) = self.allocations.get_mut(&id) {
                allocation.channel_to(peer, now);
            }
            self.drain_allocation(id, now);
        }
    }

    /// Handles a STUN or ChannelData datagram if it comes from one of our relays (or from one
    /// we stopped using).
    pub(super) fn handle_from_relay<'a>(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &'a [u8],
        now: Instant,
    ) -> Result<FromRelay<'a>, Error> {
        let Some(id) = self.relay_at(from) else {
            if self.former_relays.contains(&from) {
                tracing::debug!(target: "node::turn", %from, "message from a relay we no longer use");
                return Err(Error::UnknownRelay);
            }
            return Ok(FromRelay::NotRelay);
        };
        let message = RelayMessage::parse(datagram).map_err(Error::Turn)?;
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return Ok(FromRelay::NotRelay);
        };
        let delivered = allocation.handle(message, local, now);
        let relayed = allocation.relayed();
        self.drain_allocation(id, now);
        // The address the relay's answers arrive on is one peers may reach us on, too.
        if !self.local_addrs.contains(&local) {
            self.add_local_address(local);
        }
        match (delivered, relayed) {
            (Some((peer, payload)), Some(relayed)) => Ok(FromRelay::Peer(peer, relayed, payload)),
            (Some(_), None) | (None, Some(_) | None) => Ok(FromRelay::Handled),
        }
    }

    /// Releases the channels to peers no connection has as a candidate any more, so that a
    /// long-lived node does not run out of them ([`crate::turn::MAX_CHANNELS`] per relay).
    fn release_unused_channels(&mut self, now: Instant) {
        let in_use: std::collections::BTreeSet<SocketAddr> = self
            .connections
            .values()
            .flat_map(|c| c.remote_candidate_addrs())
            .collect();
        for allocation in self.allocations.values_mut() {
            allocation.release_channels_except(&in_use, now);
        }
    }

    pub(super) fn handle_relay_timeouts(&mut self, now: Instant) {
        if std::mem::take(&mut self.channels_to_release) {
            self.release_unused_channels(now);
        }
        let retry: Vec<RelayId> = self
            .relay_retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in retry {
            if let Some(r) = self.relay_retries.remove(&id) {
                tracing::debug!(target: "node::turn", rid = %id, "trying the relay again");
                self.retry_delays.insert(id, r.delay);
                self.allocate(r.config, now);
            }
        }
        let due: Vec<RelayId> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(allocation) = self.allocations.get_mut(&id) {
                allocation.handle_timeout(now);
            }
            self.drain_allocation(id, now);
        }
    }

    /// A new connection may need a relayed path: the relays waiting for a retry are tried now,
    /// and those still being allocated send their requests again now, instead of at the end of
    /// a backoff of up to [`RELAY_RETRY_MAX`] or of a retransmission timeout of up to 8 s. A
    /// relay that came back (restarted, reachable again) is then used within a round trip of
    /// the connection's start. At most once per [`INITIAL_RTO`], however many connections come.
    pub(super) fn try_relays_now(&mut self, now: Instant) {
        if self
            .relays_tried_at
            .is_some_and(|at| now < at + INITIAL_RTO)
        {
            return;
        }
        self.relays_tried_at = Some(now);
        // Those being allocated before the waiting ones start: theirs went out just now.
        let allocating: Vec<RelayId> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.relayed().is_none() && !a.is_failed())
            .map(|(id, _)| *id)
            .collect();
        for id in allocating {
            if let Some(allocation) = self.allocations.get_mut(&id) {
                allocation.resend_pending();
            }
            self.drain_allocation(id, now);
        }
        let waiting = std::mem::take(&mut self.relay_retries);
        for (id, r) in waiting {
            tracing::debug!(target: "node::turn", rid = %id, "a new connection: trying the relay now");
            self.retry_delays.insert(id, r.delay);
            self.allocate(r.config, now);
        }
    }

    /// Moves an allocation's datagrams to the send queue and applies its events.
    fn drain_allocation(&mut self, id: RelayId, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return;
        };
        let (src, dst) = (allocation.local(), allocation.server());
        let mut datagrams = Vec::new();
        while let Some(bytes) = allocation.poll_transmit() {
            datagrams.push(bytes);
        }
        let mut events = Vec::new();
        while let Some(event) = allocation.poll_event() {
            events.push(event);
        }
        for bytes in datagrams {
            let payload = self.buffer_from(&bytes);
            self.transmits.push_back(Transmit {
                src,
                dst,
                payload,
                via: None,
                seal: None,
            });
        }
        for event in events {
            self.on_allocation_event(id, event, now);
        }
    }

    fn on_allocation_event(&mut self, id: RelayId, event: AllocationEvent, now: Instant) {
        match event {
            AllocationEvent::ServerReflexive { addr, base } => {
                if let Ok(c) = IceCandidate::server_reflexive(addr, base) {
                    self.add_local_candidate_everywhere(c, None);
                }
            }
            AllocationEvent::Relayed { addr, base } => {
                // It works: the next failure starts the backoff over.
                self.retry_delays.remove(&id);
                if let Ok(c) = IceCandidate::relayed(addr, base) {
                    self.add_local_candidate_everywhere(c, Some(id));
                }
                // Remote candidates that arrived before the allocation get their channels now.
                let peers: Vec<SocketAddr> = self
                    .connections
                    .values()
                    .flat_map(|c| c.remote_candidate_addrs())
                    .collect();
                if let Some(allocation) = self.allocations.get_mut(&id) {
                    for peer in peers {
                        allocation.channel_to(peer, now);
                    }
                }
                self.drain_allocation(id, now);
            }
            AllocationEvent::RelayedLost { addr, base } => {
                if let Ok(c) = IceCandidate::relayed(addr, base) {
                    self.remove_local_candidate_everywhere(&c, now);
                }
            }
            AllocationEvent::Failed => self.relay_failed(id, "no answer", now),
        }
    }

    /// The relay cannot be used: its candidates and the peers' on it are withdrawn, and it is
    /// tried again after a backoff.
    fn relay_failed(&mut self, id: RelayId, why: &'static str, now: Instant) {
        let Some(allocation) = self.allocations.remove(&id) else {
            return;
        };
        let delay = self
            .retry_delays
            .remove(&id)
            .map_or(RELAY_RETRY_INITIAL, |d| (d * 2).min(RELAY_RETRY_MAX));
        tracing::info!(target: "node::turn", rid = %id, why, retry_in = ?delay, "relay unreachable; its candidates are withdrawn");
        self.forget_candidates_of(&allocation, now);
        self.forget_peers_candidates_on(&allocation, now);
        self.relay_retries.insert(
            id,
            Retry {
                config: allocation.into_config(),
                at: now + delay,
                delay,
            },
        );
    }

    /// The network reported `dst` unreachable (an ICMP port or host unreachable for a datagram
    /// we sent there; real sockets read them from the kernel's error queue).
    ///
    /// - One of our relays: nothing listens there any more (its process died, or its host),
    ///   so its allocation is gone. It is dropped at once and retried after a backoff, as when
    ///   its answers stop, but without waiting out the retransmissions that take seconds.
    /// - A peer's relayed candidate: that allocation is gone, the connection stops using it.
    /// - Anything else is ignored. A peer's server-reflexive address is often unreachable
    ///   until its own check opens its NAT: that is how hole punching starts.
    ///
    /// ICMP is not authenticated. Forging one takes knowing the node's public address and port
    /// and the relay's, and costs the node that relay until the retry; an attacker on the path
    /// can drop the traffic anyway.
    pub fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant) {
        if let Some(id) = self.relay_at(dst) {
            self.stats.unreachable_relays += 1;
            self.relay_failed(id, "ICMP unreachable", now);
            self.flush_staged(now);
            return;
        }
        let mut any = false;
        let ids: Vec<TId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                any |= conn.remove_remote_relayed_at(dst, now);
            }
            self.drain_connection_events(id);
        }
        self.flush_staged(now);
        if any {
            self.stats.unreachable_peer_candidates += 1;
            tracing::debug!(target: "node::turn", peer = %dst, "peer's relayed candidate unreachable");
        } else {
            tracing::debug!(%dst, "unreachable: not a relay");
        }
    }

    /// Makes every allocation anew, from the host's current address (see
    /// [`Node::handle_network_change`]), and tries the relays waiting for a retry now: they
    /// may have failed only because of the network that is gone.
    pub(super) fn reallocate_relays(&mut self, now: Instant) {
        let old = std::mem::take(&mut self.allocations);
        // Forgotten once none is left, so that no server-reflexive candidate is kept because
        // another old allocation still reports it.
        for allocation in old.values() {
            self.forget_candidates_of(allocation, now);
        }
        self.retry_delays.clear();
        let waiting = std::mem::take(&mut self.relay_retries);
        let configs = old
            .into_values()
            .map(Allocation::into_config)
            .chain(waiting.into_values().map(|r| r.config));
        for config in configs {
            tracing::info!(target: "node::turn", rid = %config.id, "allocating anew from the new address");
            self.allocate(config, now);
        }
    }

    fn forget_candidates_of(&mut self, allocation: &Allocation, now: Instant) {
        let server = allocation.server();
        if !self.former_relays.contains(&server) {
            if self.former_relays.len() == super::FORMER_RELAYS_KEPT {
                self.former_relays.pop_front();
            }
            self.former_relays.push_back(server);
        }
        let base = allocation.local().unwrap_or(allocation.server());
        if let Some(c) = allocation
            .relayed()
            .and_then(|a| IceCandidate::relayed(a, base).ok())
        {
            self.remove_local_candidate_everywhere(&c, now);
        }
        // The server-reflexive address stays valid while another relay reports it too.
        let still_known = self
            .allocations
            .values()
            .any(|a| a.server_reflexive() == allocation.server_reflexive());
        if let (Some(c), false) = (
            allocation
                .server_reflexive()
                .and_then(|a| IceCandidate::server_reflexive(a, base).ok()),
            still_known,
        ) {
            self.remove_local_candidate_everywhere(&c, now);
        }
    }

    fn add_local_candidate_everywhere(&mut self, candidate: IceCandidate, relay: Option<RelayId>) {
        let ids: Vec<TId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.add_local_candidate(candidate.clone(), relay);
            }
            self.drain_connection_events(id);
        }
    }

    pub(super) fn remove_local_candidate_everywhere(
        &mut self,
        candidate: &IceCandidate,
        now: Instant,
    ) {
        let ids: Vec<TId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.remove_local_candidate(candidate, now);
            }
            self.drain_connection_events(id);
        }
    }

    /// Wraps what connections produced for relayed paths and queues everything to send.
    pub(super) fn flush_staged(&mut self, now: Instant) {
        while let Some(transmit) = self.staged.pop_front() {
            if let Some(t) = self.wrap_relayed(transmit, now) {
                self.transmits.push_back(t);
            }
        }
    }

    /// A transmit for a relayed path becomes ChannelData to the relay, written in place into
    /// the headroom the connection left. Binding the channel, when needed, is queued first.
    pub(super) fn wrap_relayed(
        &mut self,
        mut transmit: Transmit,
        now: Instant,
    ) -> Option<Transmit> {
        let Some(relay) = transmit.via else {
            return Some(transmit);
        };
        let Some(allocation) = self.allocations.get_mut(&relay) else {
            tracing::debug!(target: "node::turn", rid = %relay, "dropping datagram for a relay we no longer use");
            return None;
        };
        let Some(channel) = allocation.channel_to(transmit.dst, now) else {
            tracing::debug!(target: "node::turn", rid = %relay, peer = %transmit.dst, "no channel to peer");
            return None;
        };
        let (src, dst) = (allocation.local(), allocation.server());
        self.drain_allocation(relay, now);
        if transmit.payload.headroom() < CHANNEL_DATA_HEADER_LEN {
            return None;
        }
        let len = transmit.payload.len();
        transmit
            .payload
            .prepend(CHANNEL_DATA_HEADER_LEN)
            .copy_from_slice(&channel_data_header(channel, len));
        Some(Transmit {
            src,
            dst,
            payload: transmit.payload,
            via: None,
            seal: transmit.seal,
        })
    }
}
