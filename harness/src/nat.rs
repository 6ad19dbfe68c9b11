//! A NAT box for the in-memory network.
//!
//! Endpoint-independent mapping and filtering (RFC 4787), a mapping timeout on simulated time,
//! and deliberate port reuse: a new mapping takes the lowest free port, so after one expires
//! the next inside host gets the same public IP:port. That is the situation in which a peer
//! must route by what a datagram carries, never by where it comes from.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a mapping lives without outbound traffic (RFC 4787 asks for at least 2 minutes).
pub const DEFAULT_MAPPING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
struct Mapping {
    inside: SocketAddr,
    last_used: Instant,
}

/// The NAT's mappings.
#[derive(Debug)]
pub struct Nat {
    public_ip: IpAddr,
    first_port: u16,
    timeout: Duration,
    by_port: BTreeMap<u16, Mapping>,
    by_inside: BTreeMap<SocketAddr, u16>,
}

impl Nat {
    pub(crate) fn new(public_ip: IpAddr, first_port: u16) -> Self {
        Self {
            public_ip,
            first_port,
            timeout: DEFAULT_MAPPING_TIMEOUT,
            by_port: BTreeMap::new(),
            by_inside: BTreeMap::new(),
        }
    }

    /// The address the outside sees.
    pub fn public_ip(&self) -> IpAddr {
        self.public_ip
    }

    /// Sets the mapping timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The public address of an outbound datagram from `inside`, creating the mapping if needed.
    pub(crate) fn outbound(&mut self, inside: SocketAddr, now: Instant) -> SocketAddr {
        self.expire(now);
        let port = match self.by_inside.get(&inside) {
            Some(port) => *port,
            None => {
                let port = (self.first_port..=u16::MAX)
                    .find(|p| !self.by_port.contains_key(p))
                    .unwrap_or(self.first_port);
                self.by_inside.insert(inside, port);
                port
            }
        };
        self.by_port.insert(
            port,
            Mapping {
                inside,
                last_used: now,
            },
        );
        SocketAddr::new(self.public_ip, port)
    }

    /// Where an inbound datagram to public `port` goes, if a mapping exists.
    pub(crate) fn inbound(&mut self, port: u16, now: Instant) -> Option<SocketAddr> {
        self.expire(now);
        self.by_port.get(&port).map(|m| m.inside)
    }

    /// The public address currently mapped to `inside`.
    pub fn mapped(&self, inside: SocketAddr) -> Option<SocketAddr> {
        self.by_inside
            .get(&inside)
            .map(|p| SocketAddr::new(self.public_ip, *p))
    }

    /// Drops every mapping at once, as a NAT reboot does.
    pub fn clear(&mut self) {
        self.by_port.clear();
        self.by_inside.clear();
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        let expired: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_used) >= timeout)
            .map(|(p, _)| *p)
            .collect();
        for port in expired {
            if let Some(m) = self.by_port.remove(&port) {
                self.by_inside.remove(&m.inside);
            }
        }
    }
}
