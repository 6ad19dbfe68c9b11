//! A NAT's mapping table, sans-IO: RFC 4787 mapping and filtering behaviours, a mapping timeout
//! on simulated time, port preservation, and deliberate port reuse. Both simulated networks put
//! it in their NAT boxes: [`crate::memnet`] in its routing, [`crate::turmoil_net`] in a host of
//! its own ([`crate::turmoil_net::nat_host`]).
//!
//! Time is simulated time since the start (in turmoil [`crate::turmoil_net::sim_time`]), passed
//! in on every call; it only moves forward. Drive it like the other cores: call
//! [`NatTable::outbound`] and [`NatTable::inbound`] per datagram, [`NatTable::handle_timeout`] at
//! [`NatTable::poll_timeout`], and drain [`NatTable::poll_event`] after each call.
//!
//! Port reuse: a new mapping takes the lowest free port of the pool (after the inside port, with
//! port preservation), so after a mapping expires the next inside host gets the same public
//! IP:port. That is the situation in which a peer must route by what a datagram carries, never
//! by where it comes from.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

/// The port a turmoil NAT host listens on for its inside hosts.
pub const DEFAULT_INSIDE_PORT: u16 = 9999;

/// RFC 4787 recommends at least 2 minutes; tests usually set something shorter.
pub const DEFAULT_MAPPING_TIMEOUT: Duration = Duration::from_secs(120);

/// When an inside socket gets a new public port (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MappingBehaviour {
    /// One public port per inside socket, whatever the destination.
    EndpointIndependent,
    /// One per inside socket and destination IP.
    AddressDependent,
    /// One per inside socket and destination IP:port ("symmetric").
    AddressAndPortDependent,
}

/// Which outside senders may reach a mapping (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filtering {
    /// Anyone.
    EndpointIndependent,
    /// Only IPs the inside socket has sent to through the mapping.
    AddressDependent,
    /// Only IP:ports the inside socket has sent to through the mapping.
    AddressAndPortDependent,
}

/// How a NAT behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The NAT's public IP (in turmoil the NAT host's own): what the outside sees.
    pub public_ip: IpAddr,
    /// The IPs of the hosts behind it; datagrams from any other IP are dropped.
    pub inside_hosts: BTreeSet<IpAddr>,
    /// The port inside hosts send to in turmoil (never handed out as a public port).
    pub inside_port: u16,
    /// Mapping behaviour.
    pub mapping: MappingBehaviour,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// How long a mapping (and each of its permissions) lives without traffic that refreshes it.
    pub timeout: Duration,
    /// Whether inbound traffic that passes the filter refreshes the mapping too.
    pub inbound_refresh: bool,
    /// Whether a new mapping tries the inside port first.
    pub port_preservation: bool,
    /// The public ports handed out, lowest free first.
    pub ports: RangeInclusive<u16>,
}

impl NatConfig {
    /// Endpoint-independent mapping, address-and-port-dependent filtering (a "port-restricted
    /// cone"), the default timeout, no inbound refresh, no port preservation, ports from 40000.
    pub fn new(public_ip: IpAddr, inside_hosts: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            public_ip,
            inside_hosts: inside_hosts.into_iter().collect(),
            inside_port: DEFAULT_INSIDE_PORT,
            mapping: MappingBehaviour::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            timeout: DEFAULT_MAPPING_TIMEOUT,
            inbound_refresh: false,
            port_preservation: false,
            ports: 40_000..=40_999,
        }
    }

    /// Sets the mapping behaviour.
    pub fn mapping(mut self, mapping: MappingBehaviour) -> Self {
        self.mapping = mapping;
        self
    }

    /// Sets the filtering behaviour.
    pub fn filtering(mut self, filtering: Filtering) -> Self {
        self.filtering = filtering;
        self
    }

    /// Sets the mapping timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets whether inbound traffic refreshes mappings.
    pub fn inbound_refresh(mut self, on: bool) -> Self {
        self.inbound_refresh = on;
        self
    }

    /// Sets port preservation.
    pub fn port_preservation(mut self, on: bool) -> Self {
        self.port_preservation = on;
        self
    }

    /// Sets the public port pool.
    pub fn ports(mut self, ports: RangeInclusive<u16>) -> Self {
        self.ports = ports;
        self
    }
}

/// Counters, cumulative over the NAT's life (restarts included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings removed by their timeout.
    pub mappings_expired: u64,
    /// Mappings removed by a command (flush, expire a host) or a restart.
    pub mappings_removed: u64,
    /// Inbound datagrams dropped by the filter.
    pub dropped_filtered: u64,
    /// Inbound datagrams to a port without a mapping.
    pub dropped_no_mapping: u64,
    /// Datagrams on the inside port from an IP that is not an inside host.
    pub dropped_not_inside: u64,
    /// Outbound datagrams dropped because the port pool was exhausted.
    pub dropped_no_port: u64,
    /// Datagrams translated outbound.
    pub forwarded_out: u64,
    /// Datagrams translated inbound.
    pub forwarded_in: u64,
}

/// What changed in the table, for traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatEvent {
    /// A mapping was created.
    MappingCreated {
        /// The inside socket.
        inside: SocketAddr,
        /// Its public address.
        public: SocketAddr,
    },
    /// A mapping timed out.
    MappingExpired {
        /// The inside socket.
        inside: SocketAddr,
        /// Its public address.
        public: SocketAddr,
    },
    /// A mapping was removed by a command.
    MappingRemoved {
        /// The inside socket.
        inside: SocketAddr,
        /// Its public address.
        public: SocketAddr,
    },
    /// An inbound datagram did not pass the filter.
    DroppedFiltered {
        /// The outside sender.
        from: SocketAddr,
        /// The public address it was sent to.
        public: SocketAddr,
    },
    /// An inbound datagram arrived on a port without a mapping.
    DroppedNoMapping {
        /// The outside sender.
        from: SocketAddr,
        /// The public address it was sent to.
        public: SocketAddr,
    },
    /// A datagram on the inside port came from a host that is not inside.
    DroppedNotInside {
        /// The sender.
        from: SocketAddr,
    },
    /// No public port was free for a new mapping.
    DroppedNoPort {
        /// The inside socket.
        inside: SocketAddr,
    },
}

impl fmt::Display for NatEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MappingCreated { inside, public } => write!(f, "map_create {inside} {public}"),
            Self::MappingExpired { inside, public } => write!(f, "map_expire {inside} {public}"),
            Self::MappingRemoved { inside, public } => write!(f, "map_remove {inside} {public}"),
            Self::DroppedFiltered { from, public } => write!(f, "drop_filtered {from} {public}"),
            Self::DroppedNoMapping { from, public } => write!(f, "drop_no_mapping {from} {public}"),
            Self::DroppedNotInside { from } => write!(f, "drop_not_inside {from}"),
            Self::DroppedNoPort { inside } => write!(f, "drop_no_port {inside}"),
        }
    }
}

/// A mapping as the test sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MappingInfo {
    /// The inside socket.
    pub inside: SocketAddr,
    /// Its public address.
    pub public: SocketAddr,
    /// The destination the mapping is for (`None` for endpoint-independent mapping; the port is
    /// 0 for address-dependent mapping).
    pub scope: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Any,
    Address(IpAddr),
    AddressAndPort(SocketAddr),
}

type Key = (SocketAddr, Scope);

#[derive(Debug)]
struct Mapping {
    port: u16,
    last_active: Duration,
    /// Outside endpoints the inside socket sent to, with the time of the last refresh.
    permissions: BTreeMap<SocketAddr, Duration>,
}

/// The mappings of one NAT.
#[derive(Debug)]
pub struct NatTable {
    config: NatConfig,
    mappings: BTreeMap<Key, Mapping>,
    by_port: BTreeMap<u16, Key>,
    stats: NatStats,
    events: VecDeque<NatEvent>,
}

impl NatTable {
    /// An empty table.
    pub fn new(config: NatConfig) -> Self {
        Self {
            config,
            mappings: BTreeMap::new(),
            by_port: BTreeMap::new(),
            stats: NatStats::default(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// The live mappings, ordered by inside socket.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.mappings
            .iter()
            .map(|(&(inside, scope), mapping)| MappingInfo {
                inside,
                public: SocketAddr::new(self.config.public_ip, mapping.port),
                scope: match scope {
                    Scope::Any => None,
                    Scope::Address(ip) => Some(SocketAddr::new(ip, 0)),
                    Scope::AddressAndPort(addr) => Some(addr),
                },
            })
            .collect()
    }

    /// The next event for the trace.
    pub fn poll_event(&mut self) -> Option<NatEvent> {
        self.events.pop_front()
    }

    /// When the next mapping expires.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.mappings
            .values()
            .map(|m| m.last_active + self.config.timeout)
            .min()
    }

    /// Removes the mappings whose timeout passed. A call before any deadline is a no-op.
    pub fn handle_timeout(&mut self, now: Duration) {
        let timeout = self.config.timeout;
        let expired: Vec<Key> = self
            .mappings
            .iter()
            .filter(|(_, m)| now >= m.last_active + timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(public) = self.remove(key) {
                self.stats.mappings_expired += 1;
                self.events.push_back(NatEvent::MappingExpired {
                    inside: key.0,
                    public,
                });
            }
        }
    }

    /// Translates a datagram from `inside` to `dst`: the public address to send it from, or
    /// `None` if it is dropped (not an inside host, or no free port).
    pub fn outbound(
        &mut self,
        inside: SocketAddr,
        dst: SocketAddr,
        now: Duration,
    ) -> Option<SocketAddr> {
        if !self.config.inside_hosts.contains(&inside.ip()) {
            self.stats.dropped_not_inside += 1;
            self.events
                .push_back(NatEvent::DroppedNotInside { from: inside });
            return None;
        }
        self.handle_timeout(now);
        let scope = match self.config.mapping {
            MappingBehaviour::EndpointIndependent => Scope::Any,
            MappingBehaviour::AddressDependent => Scope::Address(dst.ip()),
            MappingBehaviour::AddressAndPortDependent => Scope::AddressAndPort(dst),
        };
        let key = (inside, scope);
        if !self.mappings.contains_key(&key) {
            let Some(port) = self.free_port(inside.port()) else {
                self.stats.dropped_no_port += 1;
                self.events.push_back(NatEvent::DroppedNoPort { inside });
                return None;
            };
            self.by_port.insert(port, key);
            self.mappings.insert(
                key,
                Mapping {
                    port,
                    last_active: now,
                    permissions: BTreeMap::new(),
                },
            );
            self.stats.mappings_created += 1;
            self.events.push_back(NatEvent::MappingCreated {
                inside,
                public: SocketAddr::new(self.config.public_ip, port),
            });
        }
        let mapping = self.mappings.get_mut(&key)?;
        mapping.last_active = now;
        mapping.permissions.insert(dst, now);
        self.stats.forwarded_out += 1;
        Some(SocketAddr::new(self.config.public_ip, mapping.port))
    }

    /// Translates a datagram from `from` to public port `port`: the inside socket to deliver it
    /// to, or `None` if it is dropped (no mapping, or filtered).
    pub fn inbound(&mut self, port: u16, from: SocketAddr, now: Duration) -> Option<SocketAddr> {
        self.handle_timeout(now);
        let public = SocketAddr::new(self.config.public_ip, port);
        let Some(&key) = self.by_port.get(&port) else {
            self.stats.dropped_no_mapping += 1;
            self.events
                .push_back(NatEvent::DroppedNoMapping { from, public });
            return None;
        };
        let timeout = self.config.timeout;
        let (filtering, refresh) = (self.config.filtering, self.config.inbound_refresh);
        let mapping = self.mappings.get_mut(&key)?;
        let live = |t: &Duration| now < *t + timeout;
        let allowed = match filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => mapping
                .permissions
                .iter()
                .any(|(addr, t)| addr.ip() == from.ip() && live(t)),
            Filtering::AddressAndPortDependent => mapping.permissions.get(&from).is_some_and(live),
        };
        if !allowed {
            self.stats.dropped_filtered += 1;
            self.events
                .push_back(NatEvent::DroppedFiltered { from, public });
            return None;
        }
        if refresh {
            mapping.last_active = now;
            if let Some(t) = mapping.permissions.get_mut(&from) {
                *t = now;
            }
        }
        self.stats.forwarded_in += 1;
        Some(key.0)
    }

    /// Removes every mapping.
    pub fn flush(&mut self) {
        let keys: Vec<Key> = self.mappings.keys().copied().collect();
        self.remove_by_command(keys);
    }

    /// Removes every mapping of the inside host `ip`.
    pub fn expire_host(&mut self, ip: IpAddr) {
        let keys: Vec<Key> = self
            .mappings
            .keys()
            .filter(|(inside, _)| inside.ip() == ip)
            .copied()
            .collect();
        self.remove_by_command(keys);
    }

    /// Puts the host `ip` behind the NAT, for a network that adds hosts after its NATs.
    pub fn add_inside_host(&mut self, ip: IpAddr) {
        self.config.inside_hosts.insert(ip);
    }

    /// Changes the mapping timeout (for live mappings too).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.config.timeout = timeout;
    }

    fn remove_by_command(&mut self, keys: Vec<Key>) {
        for key in keys {
            if let Some(public) = self.remove(key) {
                self.stats.mappings_removed += 1;
                self.events.push_back(NatEvent::MappingRemoved {
                    inside: key.0,
                    public,
                });
            }
        }
    }

    fn remove(&mut self, key: Key) -> Option<SocketAddr> {
        let mapping = self.mappings.remove(&key)?;
        self.by_port.remove(&mapping.port);
        Some(SocketAddr::new(self.config.public_ip, mapping.port))
    }

    fn free_port(&self, inside_port: u16) -> Option<u16> {
        let usable = |p: &u16| *p != self.config.inside_port && !self.by_port.contains_key(p);
        if self.config.port_preservation && usable(&inside_port) {
            return Some(inside_port);
        }
        self.config.ports.clone().find(usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([192, 168, 0, last], port))
    }

    fn table(mapping: MappingBehaviour, filtering: Filtering) -> NatTable {
        let config = NatConfig::new(addr(1, 0).ip(), [addr(10, 0).ip(), addr(11, 0).ip()])
            .mapping(mapping)
            .filtering(filtering)
            .timeout(30 * S);
        NatTable::new(config)
    }

    #[test]
    fn mapping_behaviours() {
        let (h1, a, a2, b) = (addr(10, 5000), addr(2, 7), addr(2, 8), addr(3, 7));
        let mut eim = table(
            MappingBehaviour::EndpointIndependent,
            Filtering::EndpointIndependent,
        );
        let p = eim.outbound(h1, a, S);
        assert_eq!(p, Some(addr(1, 40_000)));
        assert_eq!(eim.outbound(h1, a2, S), p);
        assert_eq!(eim.outbound(h1, b, S), p);

        let mut adm = table(
            MappingBehaviour::AddressDependent,
            Filtering::EndpointIndependent,
        );
        assert_eq!(adm.outbound(h1, a, S), Some(addr(1, 40_000)));
        assert_eq!(adm.outbound(h1, a2, S), Some(addr(1, 40_000)));
        assert_eq!(adm.outbound(h1, b, S), Some(addr(1, 40_001)));

        let mut apdm = table(
            MappingBehaviour::AddressAndPortDependent,
            Filtering::EndpointIndependent,
        );
        assert_eq!(apdm.outbound(h1, a, S), Some(addr(1, 40_000)));
        assert_eq!(apdm.outbound(h1, a2, S), Some(addr(1, 40_001)));
        assert_eq!(apdm.outbound(h1, b, S), Some(addr(1, 40_002)));
        assert_eq!(apdm.stats().mappings_created, 3);
    }

    #[test]
    fn filtering_behaviours() {
        let (h1, a, a2, b) = (addr(10, 5000), addr(2, 7), addr(2, 8), addr(3, 7));
        let expect = [
            (Filtering::EndpointIndependent, [true, true, true]),
            (Filtering::AddressDependent, [true, true, false]),
            (Filtering::AddressAndPortDependent, [true, false, false]),
        ];
        for (filtering, allowed) in expect {
            let mut nat = table(MappingBehaviour::EndpointIndependent, filtering);
            let port = nat.outbound(h1, a, S).map(|p| p.port()).unwrap();
            for (from, allowed) in [a, a2, b].into_iter().zip(allowed) {
                let to = nat.inbound(port, from, 2 * S);
                assert_eq!(to.is_some(), allowed, "{filtering:?} from {from}");
            }
        }
        let mut nat = table(
            MappingBehaviour::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        );
        assert_eq!(nat.inbound(40_000, a, S), None);
        assert_eq!(nat.stats().dropped_no_mapping, 1);
    }

    #[test]
    fn expiry_refresh_and_port_reuse() {
        let (h1, h2, a) = (addr(10, 5000), addr(11, 5000), addr(2, 7));
        let mut nat = table(
            MappingBehaviour::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        );
        assert_eq!(nat.outbound(h1, a, S), Some(addr(1, 40_000)));
        assert_eq!(nat.outbound(h2, a, 2 * S), Some(addr(1, 40_001)));
        assert_eq!(nat.outbound(h1, a, 20 * S), Some(addr(1, 40_000)));
        assert_eq!(nat.poll_timeout(), Some(32 * S));
        // Inbound does not refresh by default.
        assert_eq!(nat.inbound(40_001, a, 31 * S), Some(h2));
        nat.handle_timeout(32 * S);
        assert_eq!(nat.mappings().len(), 1);
        assert_eq!(nat.inbound(40_001, a, 33 * S), None);
        nat.handle_timeout(50 * S);
        assert!(nat.mappings().is_empty());
        assert_eq!(nat.stats().mappings_expired, 2);
        // The other host gets the first host's old port.
        assert_eq!(nat.outbound(h2, a, 60 * S), Some(addr(1, 40_000)));
        let events: Vec<String> = std::iter::from_fn(|| nat.poll_event())
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            events.last().unwrap(),
            "map_create 192.168.0.11:5000 192.168.0.1:40000"
        );
    }

    #[test]
    fn inbound_refresh_keeps_the_mapping() {
        let (h1, a) = (addr(10, 5000), addr(2, 7));
        let mut nat = NatTable::new(
            NatConfig::new(addr(1, 0).ip(), [h1.ip()])
                .timeout(30 * S)
                .inbound_refresh(true),
        );
        nat.outbound(h1, a, S);
        assert_eq!(nat.inbound(40_000, a, 25 * S), Some(h1));
        nat.handle_timeout(40 * S);
        assert_eq!(nat.mappings().len(), 1);
    }

    #[test]
    fn port_preservation_and_commands() {
        let (h1, h2, a) = (addr(10, 5000), addr(11, 5000), addr(2, 7));
        let mut nat = NatTable::new(
            NatConfig::new(addr(1, 0).ip(), [h1.ip(), h2.ip()]).port_preservation(true),
        );
        assert_eq!(nat.outbound(h1, a, S), Some(addr(1, 5000)));
        assert_eq!(nat.outbound(h2, a, S), Some(addr(1, 40_000)));
        assert_eq!(
            nat.outbound(addr(10, DEFAULT_INSIDE_PORT), a, S),
            Some(addr(1, 40_001))
        );
        nat.expire_host(h1.ip());
        assert_eq!(nat.mappings().len(), 1);
        nat.flush();
        assert!(nat.mappings().is_empty());
        assert_eq!(nat.stats().mappings_removed, 3);
        assert_eq!(nat.outbound(addr(99, 1), a, S), None);
        assert_eq!(nat.stats().dropped_not_inside, 1);
    }

    #[test]
    fn exhausted_pool_drops() {
        let a = addr(2, 7);
        let mut nat = NatTable::new(
            NatConfig::new(addr(1, 0).ip(), [addr(10, 0).ip()]).ports(40_000..=40_000),
        );
        assert!(nat.outbound(addr(10, 1), a, S).is_some());
        assert_eq!(nat.outbound(addr(10, 2), a, S), None);
        assert_eq!(nat.stats().dropped_no_port, 1);
    }
}
